"""The two proposed methods; importing this package registers them."""
