"""Reaching hosts where libvirt has no API: SSH (paramiko) and ansible (ansible-runner)."""
