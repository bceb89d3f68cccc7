"""The router: the public edge. Validates, tokenises, asks for a placement, streams tokens back."""
