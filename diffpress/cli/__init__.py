"""Command-line front end; talks to diffpress.api only."""
