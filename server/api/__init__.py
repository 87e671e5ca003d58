"""HTTP layer: protocol models, thin routers, error mapping."""
