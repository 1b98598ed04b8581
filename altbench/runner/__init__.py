"""Suite -> cells -> isolated workers -> store."""
