"""One account per real-world customer across Salesforce, HubSpot and billing.

Records are linked rule by rule, strongest first: the explicit mapping table, then external ids
(a Salesforce account's `External_Account_Id__c`, a billing account's CRM id), then the normalized
web domain, then the normalized name (low confidence). A link is made only when it is unambiguous:

- an account holds at most one Salesforce account and one HubSpot company (billing accounts may be
  several), so a domain shared by two Salesforce accounts links neither to the HubSpot company
  that has it too;
- two accounts that already had ids are never merged (that would rename one); only the mapping
  table may merge them.

Everything refused is reported as a conflict with all its sides. Ids are stable: a record keeps the
account id it had the day before, and a new account's id is a hash of its first record (in a fixed
order), so the same inputs give the same ids.
"""

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

SYSTEMS = ("salesforce", "hubspot", "billing")  # also the order that picks an account's first record
EXCLUSIVE_SYSTEMS = frozenset({"salesforce", "hubspot"})  # one record of each per account
MAPPING, PREVIOUS, EXTERNAL_ID, DOMAIN, NAME, UNMATCHED = "mapping", "previous", "external_id", "domain", "name", None
LOW_CONFIDENCE_RULES = frozenset({NAME})

RECORDS_SCHEMA = {
    "system": pl.Utf8,
    "record_id": pl.Utf8,
    "name": pl.Utf8,
    "domain": pl.Utf8,  # normalized_domain
    "match_name": pl.Utf8,  # normalized_name
    "linked_system": pl.Utf8,  # the system `linked_id` belongs to; null: any other system
    "linked_id": pl.Utf8,
}
MAPPING_SCHEMA = {"account_key": pl.Utf8, "system": pl.Utf8, "record_id": pl.Utf8}
IDENTITY_SCHEMA = {
    "account_id": pl.Utf8,
    "system": pl.Utf8,
    "record_id": pl.Utf8,
    "match_rule": pl.Utf8,
    "confidence": pl.Utf8,
    "name": pl.Utf8,
    "domain": pl.Utf8,
}
CONFLICTS_SCHEMA = {
    "rule": pl.Utf8,
    "match_key": pl.Utf8,
    "reason": pl.Utf8,
    "system": pl.Utf8,
    "record_id": pl.Utf8,
    "name": pl.Utf8,
}


@dataclass(frozen=True)
class Matched:
    identity: pl.DataFrame
    """One row per record: its account, and the rule (and confidence) that put it there."""
    conflicts: pl.DataFrame
    """Links refused, one row per side: the rule, the shared key, why, and the record."""


def account_id_for(system: str, record_id: str) -> str:
    """A new account's id: a hash of its first record, so rebuilding gives the same id."""
    return "acc_" + hashlib.sha256(f"{system}:{record_id}".encode()).hexdigest()[:16]


class _Accounts:
    """Union-find over records, refusing unions that break the rules above."""

    def __init__(self, records: list[dict], previous: dict[tuple[str, str], dict]):
        self.records = records
        self.parent = list(range(len(records)))
        self.systems = [Counter([record["system"]]) for record in records]
        self.mapping_keys: list[set[str]] = [set() for _ in records]
        self.previous_ids = [
            {previous[key]["account_id"]} if (key := (record["system"], record["record_id"])) in previous else set()
            for record in records
        ]
        self.rule: list[str | None] = [
            previous.get((record["system"], record["record_id"]), {}).get("match_rule") for record in records
        ]
        self.conflicts: list[dict] = []

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def refusal(self, roots: set[int], rule: str) -> str | None:
        """Why the accounts `roots` may not become one under `rule`, or None."""
        if rule == MAPPING:
            return None
        systems = sum((self.systems[root] for root in roots), Counter())
        doubled = sorted(system for system in EXCLUSIVE_SYSTEMS if systems[system] > 1)
        if doubled:
            return f"would put {systems[doubled[0]]} {doubled[0]} records in one account"
        previous = set().union(*(self.previous_ids[root] for root in roots))
        if len(previous) > 1:
            return f"would merge existing accounts {', '.join(sorted(previous))}"
        keys = set().union(*(self.mapping_keys[root] for root in roots))
        if len(keys) > 1:
            return f"would merge mapped accounts {', '.join(sorted(keys))}"
        return None

    def link(self, nodes: list[int], rule: str, match_key: str) -> bool:
        """Make `nodes` one account under `rule`, or report a conflict; True if linked."""
        roots = {self.find(node) for node in nodes}
        if len(roots) < 2:
            return False
        reason = self.refusal(roots, rule)
        if reason:
            self.conflicts.extend(
                {"rule": rule, "match_key": match_key, "reason": reason, **self._side(node)} for node in nodes
            )
            return False
        first, *others = sorted(roots)
        for root in others:
            self.parent[root] = first
            self.systems[first] += self.systems[root]
            self.mapping_keys[first] |= self.mapping_keys[root]
            self.previous_ids[first] |= self.previous_ids[root]
        for node in nodes:
            if self.rule[node] is None:
                self.rule[node] = rule
        return True

    def _side(self, node: int) -> dict:
        record = self.records[node]
        return {"system": record["system"], "record_id": record["record_id"], "name": record["name"]}


def match_accounts(records: pl.DataFrame, mapping: pl.DataFrame, previous: pl.DataFrame | None = None) -> Matched:
    """The account of every record in `records` (`RECORDS_SCHEMA`).

    `mapping` (`MAPPING_SCHEMA`) lists records that are one account, by a shared `account_key`;
    `previous` is the identity of the day before (`IDENTITY_SCHEMA`), whose ids are kept.
    """
    rows = (
        records.select(pl.col(name).cast(dtype) for name, dtype in RECORDS_SCHEMA.items())
        .unique(["system", "record_id"], keep="first")
        .sort("system", "record_id")
    )
    listed = rows.to_dicts()
    index = {(record["system"], record["record_id"]): node for node, record in enumerate(listed)}
    before = {} if previous is None else {(row["system"], row["record_id"]): row for row in previous.to_dicts()}
    accounts = _Accounts(listed, before)

    _link_mapping(accounts, index, mapping)
    for account_id, nodes in _groups((before[key]["account_id"], node) for key, node in index.items() if key in before):
        accounts.link(nodes, PREVIOUS, account_id)
    for node, record in enumerate(listed):
        if record["linked_id"] is None:
            continue
        targets = [
            index[system, record["linked_id"]]
            for system in SYSTEMS
            if system != record["system"]
            and record["linked_system"] in (None, system)
            and (system, record["linked_id"]) in index
        ]
        if targets:
            accounts.link([node, *targets], EXTERNAL_ID, record["linked_id"])
    for rule, column in ((DOMAIN, "domain"), (NAME, "match_name")):
        for key, nodes in _groups((record[column], node) for node, record in enumerate(listed) if record[column]):
            accounts.link(nodes, rule, key)

    return Matched(_identity(accounts, listed), pl.DataFrame(accounts.conflicts, schema=CONFLICTS_SCHEMA))


def _link_mapping(accounts: _Accounts, index: dict[tuple[str, str], int], mapping: pl.DataFrame) -> None:
    """Records listed under one account key become one account; a record under two keys is a conflict."""
    claims = (
        mapping.select(pl.col(name).cast(dtype) for name, dtype in MAPPING_SCHEMA.items())
        .unique()
        .sort("account_key", "system", "record_id")
    )
    doubled = claims.filter(pl.len().over("system", "record_id") > 1)
    for row in doubled.to_dicts():
        accounts.conflicts.append(
            {
                "rule": MAPPING,
                "match_key": row["account_key"],
                "reason": "the record is listed under more than one account_key",
                "system": row["system"],
                "record_id": row["record_id"],
                "name": None,
            }
        )
    usable = claims.join(doubled, on=["system", "record_id"], how="anti")
    for account_key, keys in _groups(
        (row["account_key"], (row["system"], row["record_id"])) for row in usable.to_dicts()
    ):
        nodes = [index[key] for key in keys if key in index]
        for node in nodes:
            accounts.mapping_keys[node].add(account_key)
        if len(nodes) > 1:
            accounts.link(nodes, MAPPING, account_key)
        elif nodes and accounts.rule[nodes[0]] is None:
            accounts.rule[nodes[0]] = MAPPING


def _groups(pairs: Iterable[tuple[str, object]]) -> list[tuple[str, list]]:
    grouped: dict[str, list] = {}
    for key, member in pairs:
        grouped.setdefault(key, []).append(member)
    return sorted(grouped.items())


def _identity(accounts: _Accounts, listed: list[dict]) -> pl.DataFrame:
    members: dict[int, list[int]] = {}
    for node in range(len(listed)):
        members.setdefault(accounts.find(node), []).append(node)
    rows = []
    for root, nodes in members.items():
        previous = sorted(accounts.previous_ids[root])
        if previous:
            account_id = previous[0]  # one, unless the mapping merged accounts: then the oldest-sorting id
        else:
            first = min(nodes, key=lambda node: (SYSTEMS.index(listed[node]["system"]), listed[node]["record_id"]))
            account_id = account_id_for(listed[first]["system"], listed[first]["record_id"])
        for node in nodes:
            rule = accounts.rule[node] if len(nodes) > 1 or accounts.rule[node] == MAPPING else UNMATCHED
            rows.append(
                {
                    "account_id": account_id,
                    "system": listed[node]["system"],
                    "record_id": listed[node]["record_id"],
                    "match_rule": rule,
                    "confidence": None if rule is None else ("low" if rule in LOW_CONFIDENCE_RULES else "high"),
                    "name": listed[node]["name"],
                    "domain": listed[node]["domain"],
                }
            )
    return pl.DataFrame(rows, schema=IDENTITY_SCHEMA).sort("account_id", "system", "record_id")
