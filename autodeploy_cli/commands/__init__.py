"""One module per `ad` command that does more than parse: run, models, plan (ad build --plan), conformance."""
