"""Command-line scripts (deploy, data generators); a package so that the deploy command's parts import each other."""
