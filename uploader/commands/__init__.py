"""``ctx-uploader``: settings loaded once and passed down, logging configured, errors turned into
one line (``click.ClickException``). The top layer: may import every other part of the uploader;
nothing imports it."""
