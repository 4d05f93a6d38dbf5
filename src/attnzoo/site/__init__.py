"""A static reference site, one page per registered mechanism (``attnzoo docs``).

Each mechanism's page shows its docstring (the math, as written), facts (family, layout, role,
patterns, masks per pattern, state, exactness, attention maps, impls, complexity, paper and
official code, what it is verified against), its config (every field with type, default,
limits and description, and the checks relating fields), an example call, and from the store,
when given, its latest measured speed (plot, table with trust marks, scaling exponents), its
quality results and its peer ratios. Index pages list the mechanisms, by family, layout and
role. Offline and self-contained like the report: inline CSS and SVG, no scripts, relative
links (it opens from ``file://``).
"""

from attnzoo.site.build import SiteResult, build_pages, build_site, site_command
from attnzoo.site.links import LinkReport, check_links

__all__ = [
    "LinkReport",
    "SiteResult",
    "build_pages",
    "build_site",
    "check_links",
    "site_command",
]
