"""What every stage uses the same way: its command line (`cli`), the error a user must fix (`errors`), its lock on
a folder and the leftovers of a killed run (`locks`), and the pictures it writes (`plots`).

The bottom of the pipeline: it imports only the runtime layer, and every other part of `pipeline` may import it
(`pyproject.toml`'s import-linter contracts).
"""
