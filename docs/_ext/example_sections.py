"""A griffe extension for the API pages: torchcb's docstrings title their doctests ``Example:``.

Google style knows ``Examples:`` as the section whose ``>>>`` lines render as code; griffe reads the
singular as a note of free text. This maps the singular to the same section.
"""

import griffe
from griffe._internal.docstrings import google

google._section_kind.setdefault("example", griffe.DocstringSectionKind.examples)


class ExampleSections(griffe.Extension):
    """Loading this module is the whole of the extension."""
