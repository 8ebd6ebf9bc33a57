"""libvirt only: connections, domain XML, guests, storage, migration."""
