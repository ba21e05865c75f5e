"""The fixed-order pass manager: stages, transform registry, runner, report, dumps, verification."""
