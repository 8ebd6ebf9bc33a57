"""Managed networks on a host: DHCP responders and the flows in front of them."""
