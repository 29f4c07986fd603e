"""The edge: code that touches the running system."""
