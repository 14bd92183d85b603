"""What every Constellation service shares: configuration, errors, logging and the server bootstrap."""
