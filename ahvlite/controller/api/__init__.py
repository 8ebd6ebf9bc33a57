"""The controller's HTTPS API and its client.

Only this package imports FastAPI, uvicorn and httpx. Its modules are imported by
name where needed (nothing is re-exported here), so the CLI pays for httpx only when
it talks to the API and never loads the server side.

- ``models``: request/response models both sides share (pydantic only)
- ``config``: the client's configuration file and environment
- ``auth``: principals from client certificates and bearer tokens; the token table
- ``reads``: the table of named read operations any controller serves
- ``uploads``: the leader's staging area for uploaded files
- ``app``: the FastAPI app over an injected backend
- ``server``: uvicorn over TLS in a thread of the controller
- ``client``: the HTTP client (CLI, lab, benches)
"""
