"""A room in the browser: a gateway serves one page to the people it holds identities for."""
