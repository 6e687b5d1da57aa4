"""Label Studio for blurset: labelling config, SDK client, local server, ML backend, brush RLE and
export parsing (see ``docs/annotation.md``)."""
