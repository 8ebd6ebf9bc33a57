"""Host networking: OVS through ovsdbapp (net/ovs), links and addresses through netlink."""
