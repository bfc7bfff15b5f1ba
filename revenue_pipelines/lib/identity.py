"""The keys accounts are matched on across sources, as Polars expressions: Salesforce ids in their
18-character form, web domains, and company names.

Matching rules (revenue/core/account_identity) compare these, never the raw values: a Salesforce id
arrives in 15 or 18 characters, a domain as `https://www.acme.com/about` or `billing@acme.com`, a
name as `ACME, LLC` or `Acme Inc.`.
"""

import polars as pl

# The 18-character id's suffix: for each 5-character block of the 15-character id, a character
# whose index has bit i set when character i of the block is an uppercase letter.
SALESFORCE_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SALESFORCE_ID = r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$"
# Mailbox providers: a shared domain says nothing about which company someone works for.
FREE_MAIL_DOMAINS = frozenset(
    {
        "aol.com", "gmail.com", "googlemail.com", "gmx.com", "gmx.de", "gmx.net", "hotmail.com", "hotmail.co.uk",
        "icloud.com", "live.com", "mail.com", "mail.ru", "me.com", "msn.com", "outlook.com", "proton.me",
        "protonmail.com", "qq.com", "web.de", "yahoo.com", "yahoo.co.uk", "yandex.com", "yandex.ru", "zoho.com",
    }
)  # fmt: skip
# Legal forms dropped from the end of a company name, after punctuation is gone.
LEGAL_FORMS = (
    "inc", "incorporated", "llc", "ltd", "limited", "corp", "corporation", "co", "company", "plc", "gmbh", "ag",
    "sa", "sas", "sarl", "bv", "nv", "oy", "ab", "as", "pty", "srl", "spa", "kk",
)  # fmt: skip
_LEGAL_SUFFIX = rf"(?:\s+(?:{'|'.join(LEGAL_FORMS)}))+$"


def salesforce_id_18(ids: pl.Expr) -> pl.Expr:
    """The 18-character, case-safe form of 15- or 18-character Salesforce ids; null for anything else.

    An 18-character id's suffix is recomputed from its first 15 characters, so one whose suffix
    does not match them (a mistyped id) becomes null rather than a wrong match.
    """
    head = ids.str.slice(0, 15)
    suffix = [
        pl.lit(SALESFORCE_SUFFIX).str.slice(
            pl.sum_horizontal(
                head.str.slice(block * 5 + position, 1).str.contains(r"^[A-Z]$").cast(pl.Int64) * (1 << position)
                for position in range(5)
            ),
            1,
        )
        for block in range(3)
    ]
    full = pl.concat_str(head, *suffix)
    valid = ids.str.contains(SALESFORCE_ID)
    length = ids.str.len_chars()
    return (
        pl.when(valid & (length == 15))
        .then(full)
        .when(valid & (length == 18) & (full == ids))
        .then(ids)
        .otherwise(None)
    )


def normalized_domain(values: pl.Expr) -> pl.Expr:
    """The registrable host of a website or e-mail address: lowercase, in Unicode (an
    internationalised domain arrives in either form: HubSpot keeps `bücher.de`, a Salesforce
    Website often `xn--bcher-kva.de`), no scheme, `www.`, port, path or trailing dot; null for
    free-mail providers and for anything without a dot."""
    host = (
        values.str.strip_chars()
        .str.to_lowercase()
        .str.replace(r"^[a-z][a-z0-9+.-]*://", "")
        .str.replace(r"^[^@/]*@", "")
        .str.replace(r"[/?#:].*$", "")
        .str.strip_chars_end(".")
        .str.replace(r"^www\d*\.", "")
        .map_batches(_unicode_hosts, return_dtype=pl.Utf8, is_elementwise=True)
    )
    label = r"(?:[^\W_]|-)+"
    return pl.when(host.str.contains(rf"^{label}(\.{label})+$") & ~host.is_in(FREE_MAIL_DOMAINS)).then(host)


def _unicode_hosts(hosts: pl.Series) -> pl.Series:
    """Punycode hosts in Unicode, decoded once per distinct value; one that does not decode stays."""
    encoded = hosts.filter(hosts.str.contains("xn--")).unique()
    return hosts.replace({host: _to_unicode(host) for host in encoded}) if encoded.len() else hosts


def _to_unicode(host: str) -> str:
    try:
        return host.encode("ascii").decode("idna")
    except UnicodeError:
        return host


def normalized_name(names: pl.Expr) -> pl.Expr:
    """A company name reduced for a low-confidence match: lowercase, `&` as `and`, punctuation as
    spaces, legal forms (Inc., LLC, GmbH...) dropped from the end, spaces collapsed; null if empty."""
    reduced = (
        names.str.to_lowercase()
        .str.replace_all("&", " and ")
        .str.replace_all(r"[^\p{L}\p{N}]+", " ")
        .str.strip_chars()
        .str.replace(_LEGAL_SUFFIX, "")
        .str.strip_chars()
    )
    return pl.when(reduced.str.len_chars() > 0).then(reduced)
