//! Kernel networking through rtnetlink: namespaces, links, addresses, routes, sysctls, ARP.
