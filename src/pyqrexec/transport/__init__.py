"""vchan over Unix sockets: naming, listening, connecting with retry. Bytes only."""
