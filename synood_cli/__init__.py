"""synood: SynOOD out-of-distribution detection with vision-language models.

The package root stays import-light (no torch) so that `synood --help` and shell
completion are fast; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
