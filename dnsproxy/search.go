package dnsproxy

// SearchSuffix turns a --dns-search entry (a namespace, or a domain under
// the cluster domain) into the domain one-label names are tried under, e.g.
// "default" → "default.svc.cluster.local."; domain is fully qualified. The
// SOCKS and HTTP proxies resolve short names the same way.
func SearchSuffix(s, domain string) (string, error) { return searchSuffix(s, domain) }
