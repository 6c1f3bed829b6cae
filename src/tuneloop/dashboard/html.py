"""Server-side HTML: an escaped-by-default builder, the page layout, tables, pagination and form errors.

Pages are plain HTML rendered here (no template engine, no node build, no CDN); ``static/`` holds the
one script (live curves, the playground's streaming) and the stylesheet. :class:`Html` marks text that
is already markup; everything else is escaped on the way in, so a run name or a model answer can
never inject markup.
"""

from __future__ import annotations

import html as _html
from urllib.parse import urlencode

NAV = (("runs", "/runs", "Runs"), ("evals", "/evals", "Evaluations"), ("tune", "/tune", "Tuning"),
       ("serving", "/serving", "Serving"),
       ("registry", "/registry", "Registry"), ("playground", "/playground", "Playground"),
       ("annotate", "/annotate", "Annotation"))


class Html(str):
    """A string that is markup already (not escaped again)."""


def esc(value) -> Html:
    if isinstance(value, Html):
        return value
    return Html(_html.escape("" if value is None else str(value), quote=True))


def join(parts) -> Html:
    return Html("".join(esc(p) for p in parts))


def join_with(parts, separator: str) -> Html:
    return Html(esc(separator).join(esc(p) for p in parts))


def tag(element: str, content="", /, **attrs) -> Html:
    rendered = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    if element == "input":
        return Html(f"<input{rendered}>")
    inner = esc(content) if not isinstance(content, list) else join(content)
    return Html(f"<{element}{rendered}>{inner}</{element}>")


def link(href: str, text, /, **attrs) -> Html:
    return tag("a", text, href=href, **attrs)


def number(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def table(headers, rows, **attrs) -> Html:
    head = tag("tr", [tag("th", h) for h in headers])
    body = [tag("tr", [tag("td", c) for c in row]) for row in rows]
    return tag("table", [tag("thead", [head]), tag("tbody", body)], **attrs)


def pager(path: str, page: int, pages: int, **params) -> Html:
    """Previous / next links keeping the other query parameters."""
    def href(p):
        return path + "?" + urlencode({**{k: v for k, v in params.items() if v}, "page": p})

    parts = [link(href(page - 1), "< previous", rel="prev") if page > 1 else Html(""),
             tag("span", f"page {page} of {pages}", class_="pageno"),
             link(href(page + 1), "next >", rel="next") if page < pages else Html("")]
    return tag("nav", parts, class_="pager")


def field_error(errors: dict, name: str) -> Html:
    """The message for form field ``name``, shown beside it (``field: message``)."""
    if name not in errors:
        return Html("")
    return tag("p", f"{name}: {errors[name]}", class_="error", data_field=name, role="alert")


def layout(title: str, active: str, body, head_extra="") -> Html:
    nav = [link(href, text, class_="active" if key == active else None) for key, href, text in NAV]
    return Html(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)} - tuneloop</title>"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
        f"<script src=\"/static/dashboard.js\" defer></script>{head_extra}</head><body>"
        f"<header><strong>tuneloop</strong>{join(nav)}</header>"
        f"<main><h1>{esc(title)}</h1>{esc(body) if not isinstance(body, list) else join(body)}</main>"
        "</body></html>")
