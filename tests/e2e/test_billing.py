"""Prices, charges, statements, revenue and disclosure end to end (docs/billing.md).

A data space of its own (four departments), so every charge in its log is one this module
made and the totals can be checked exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction

import pytest

from yumen.errors import Code, exit_code
from yumen.localspace import Department, LocalSpace

pytestmark = pytest.mark.e2e

PATIENTS = {"privacy_unit": {"namespace": "billing-patients", "shared": True}}
DEPARTMENTS = (
    Department(id="transport-dept", datasets=(("bus-trips", 5_000),)),
    Department(id="health-commission", datasets=(("outpatient-visits", 5_000),), registration={"outpatient-visits": PATIENTS}),
    Department(id="health-tianshui", datasets=(("outpatient-visits", 3_000, "outpatient-visits-tianshui"),),
               registration={"outpatient-visits-tianshui": PATIENTS}),
    # refuses any job above ε 0.25 before it reads anything: the hold is released
    Department(id="culture-tourism", datasets=(("scenic-visits", 5_000),), local_policy={"max_epsilon_per_job": "0.25"}),
)
LICENSE = "LIC-2026-0001"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    s = LocalSpace(tmp_path_factory.mktemp("billing"), departments=DEPARTMENTS)
    s.setup()
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()


def cli(space, who):
    env = space.cli_env(who)

    def run(*args, check=0):
        proc = subprocess.run([sys.executable, "-m", "yumen", *args], env=env, text=True, capture_output=True, timeout=180)
        if check is not None:
            assert proc.returncode == check, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def log_size(space):
    """The size of the broker's signed checkpoint, as an auditor reads it."""
    from yumen.audit._client import AuditClient
    from yumen.rpc import secure_channel

    with secure_channel(space.address, space.tls("auditor-1")) as channel:
        return int(AuditClient(channel).checkpoint().splitlines()[1])


def export(space, tmp_path, name="export"):
    out = tmp_path / name
    cli(space, "auditor-1")("audit", "export", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def jobs(space):
    """The jobs whose charges the tests below check: paid, free, multi-department, refused."""
    op = cli(space, "operator-1")
    out = {}
    out["commercial"] = json.loads(op("submit", "query", "--dataset", "bus-trips", "--aggregate", "sum", "--column",
                                      "fare_yuan", "--epsilon", "0.5", "--purpose", "commercial", "--json").stdout)
    out["free"] = json.loads(op("submit", "query", "--dataset", "bus-trips", "--aggregate", "count", "--epsilon", "0.3",
                                "--purpose", "public-interest", "--json").stdout)
    out["two_cities"] = json.loads(op("submit", "query", "--dataset", "outpatient-visits", "--dataset",
                                      "outpatient-visits-tianshui", "--aggregate", "count", "--epsilon", "0.33",
                                      "--purpose", "research", "--json").stdout)
    refused = op("submit", "query", "--dataset", "scenic-visits", "--aggregate", "count", "--epsilon", "0.5",
                 "--purpose", "research", "--json", check=None)
    assert refused.returncode != 0, refused.stdout
    out["refused_stderr"] = refused.stderr
    return out


def test_the_posted_catalogue_is_the_seeded_one_and_anyone_may_read_it(space):
    cat = json.loads(cli(space, "operator-1")("billing", "catalogue", "--json").stdout)
    rows = {(i["kind"], i["product"], i["purpose"], i["unit"]): i["amount"] for i in cat["items"] if i.get("in_force")}
    assert rows[("price", "standard", "commercial", "job")] == "50"
    assert rows[("cap", "standard", "commercial", "epsilon")] == "500"
    assert cat["free_purposes"] == ["public-interest"]


def test_explain_quotes_the_price_from_the_catalogue(space):
    out = json.loads(cli(space, "operator-1")("policy", "explain", "--dataset", "bus-trips", "--aggregate", "count",
                                              "--epsilon", "0.5", "--purpose", "commercial", "--json").stdout)
    assert out["price"] == "250.00"
    assert {(x["unit"], x["amount"]) for x in out["quote"]["lines"]} == {("job", "50.00"), ("epsilon", "200.00")}


@pytest.mark.parametrize("who,args,code,words", [
    ("operating-body-1", ["price", "--unit", "job", "--amount", "61"], Code.INVALID_ARGUMENT, "above its cap"),
    ("operating-body-1", ["price", "--unit", "job", "--amount", "-5"], Code.INVALID_ARGUMENT, "negative"),
    ("operating-body-1", ["price", "--unit", "job", "--amount", "5,00"], Code.INVALID_ARGUMENT, "not a decimal"),
    ("admin-1", ["cap", "--unit", "job", "--amount", "40"], Code.INVALID_ARGUMENT, "above its cap"),
    ("operating-body-1", ["price", "--unit", "job", "--amount", "40", "--from", "2026-01-01"], Code.INVALID_ARGUMENT,
     "never repriced"),
    ("admin-1", ["price", "--unit", "job", "--amount", "40"], Code.PERMISSION_DENIED, "operating body"),
    ("operating-body-1", ["cap", "--unit", "job", "--amount", "70"], Code.PERMISSION_DENIED, "administrator"),
    ("operator-1", ["price", "--unit", "job", "--amount", "40"], Code.PERMISSION_DENIED, ""),
])
def test_bad_catalogue_changes_are_refused_and_log_nothing(space, who, args, code, words):
    before = log_size(space)
    proc = cli(space, who)("billing", args[0], "--product", "standard", "--purpose", "commercial", *args[1:], check=None)
    assert proc.returncode == exit_code(code), proc.stderr
    assert words in proc.stderr
    assert log_size(space) == before


def test_overlapping_effective_dates_are_refused(space):
    body = cli(space, "operating-body-1")
    base = ["billing", "price", "--product", "premium", "--purpose", "research", "--unit", "job"]
    body(*base, "--amount", "9", "--from", "2030-01-01", "--until", "2030-02-01")
    before = log_size(space)
    proc = body(*base, "--amount", "8", "--from", "2030-01-15", "--until", "2030-03-01", check=None)
    assert proc.returncode == exit_code(Code.INVALID_ARGUMENT) and "overlaps" in proc.stderr
    assert log_size(space) == before


def test_a_statement_for_an_unknown_license_is_refused(space):
    proc = cli(space, "auditor-1")("billing", "statement", "--license", "LIC-NOPE", "--period", "2026-11", check=None)
    assert proc.returncode == exit_code(Code.NOT_FOUND) and "no license" in proc.stderr
    proc = cli(space, "auditor-1")("billing", "statement", "--license", LICENSE, "--period", "2026-13", check=None)
    assert proc.returncode == exit_code(Code.INVALID_ARGUMENT) and "not a month" in proc.stderr


def _statement(space, period):
    return json.loads(cli(space, "auditor-1")("billing", "statement", "--license", LICENSE, "--period", period,
                                               "--json").stdout)


def test_each_job_is_held_then_settled_from_metering_or_released(space, jobs):
    period = time.strftime("%Y-%m", time.gmtime())
    st = _statement(space, period)
    by_id = {j["job_id"]: j for j in st["jobs"]}
    paid = by_id[jobs["commercial"]["job"]["job_id"]]
    assert jobs["commercial"]["job"]["price_held"] == "250.00"  # the quote, held at submission
    assert paid["status"] == "settled" and paid["amount"] == "250.00"  # 50 per job + 0.5 ε × 400
    assert {(x["unit"], x["quantity"], x["unit_price"], x["cap"]) for x in paid["lines"]} == {
        ("job", "1", "50", "60"), ("epsilon", "0.5", "400", "500")}
    assert paid["datasets"] == ["bus-trips"] and paid["departments"] == ["transport-dept"]
    assert paid["log_indices"]["hold"] < paid["log_indices"]["settled"] and paid["log_indices"]["executed"]
    assert by_id[jobs["free"]["job"]["job_id"]]["amount"] == "0.00"  # public-interest use is free
    two = by_id[jobs["two_cities"]["job"]["job_id"]]
    # health data sells as premium: 10 per job + 2 datasets × 0.33 ε × 50
    assert two["product"] == "premium" and two["amount"] == "43.00"
    assert two["departments"] == ["health-commission", "health-tianshui"]
    released = [j for j in st["jobs"] if j["status"] == "released"]
    assert len(released) == 1 and released[0]["datasets"] == ["scenic-visits"] and released[0]["amount"] == "0.00"
    assert st["total"] == f"{sum(Decimal(j['amount']) for j in st['jobs']):.2f}"


def test_statement_as_table_and_csv_agree_with_json(space, jobs):
    period = time.strftime("%Y-%m", time.gmtime())
    auditor = cli(space, "auditor-1")
    st = _statement(space, period)
    rows = list(csv.DictReader(io.StringIO(auditor("billing", "statement", "--license", LICENSE, "--period", period,
                                                    "--csv").stdout)))
    assert [(r["job_id"], r["amount"]) for r in rows] == [(j["job_id"], j["amount"]) for j in st["jobs"]]
    assert {"purpose", "product", "unit", "quantity", "unit_price", "cap", "datasets", "departments", "log_indices"} <= set(rows[0])
    table = auditor("billing", "statement", "--license", LICENSE, "--period", period).stdout
    assert f"total {st['total']} CNY" in table and jobs["commercial"]["job"]["job_id"] in table


def test_a_price_change_never_reprices_a_held_job(space, jobs, tmp_path):
    body = cli(space, "operating-body-1")
    body("billing", "price", "--product", "standard", "--purpose", "commercial", "--unit", "epsilon", "--amount", "300")
    # and a price per 1,000 rows scanned, metered by the department
    cli(space, "admin-1")("billing", "cap", "--product", "standard", "--purpose", "commercial", "--unit", "thousand_rows",
                          "--amount", "0.05")
    body("billing", "price", "--product", "standard", "--purpose", "commercial", "--unit", "thousand_rows",
         "--amount", "0.02")
    op = cli(space, "operator-1")
    after = json.loads(op("submit", "query", "--dataset", "bus-trips", "--aggregate", "count", "--epsilon", "0.5",
                          "--purpose", "commercial", "--json").stdout)
    st = {j["job_id"]: j for j in _statement(space, time.strftime("%Y-%m", time.gmtime()))["jobs"]}
    assert st[jobs["commercial"]["job"]["job_id"]]["amount"] == "250.00"  # held before the change
    # the rows are metered from the count the version's quality report released with DP noise,
    # never from the snapshot's exact size (5,000 rows): post-processing, no further loss
    shown = json.loads(op("catalog", "show", "bus-trips", "--json").stdout)
    released = shown["quality"]["table"]["rows"]
    thousands = math.ceil(max(released, 0) / 1000)
    line = {x["unit"]: x["quantity"] for x in st[after["job"]["job_id"]]["lines"]}
    # (a noisy count at or below zero meters no rows, and a zero quantity makes no line)
    assert line.get("thousand_rows") == (str(thousands) if thousands else None), (line, released)
    assert Decimal(st[after["job"]["job_id"]]["amount"]) == Decimal("200") + thousands * Decimal("0.02")


def test_the_auditors_replay_rebuilds_every_statement_to_the_fen(space, jobs, tmp_path):
    out = export(space, tmp_path)
    proc = cli(space, "auditor-1")("audit", "replay", "--from", str(out), "--vkey",
                                   str(space.root / "broker-state" / "log.vkey"))
    assert "match the broker's to the fen" in proc.stdout, proc.stdout


def test_replay_catches_a_charge_that_differs_from_the_catalogue_and_metering(space, jobs, tmp_path):
    """A broker that logs a wrong amount (signed by its own key, so verification passes) is caught."""
    import dataclasses

    from yumen.audit import ChargeRecorded
    from yumen.audit._billing import BillingBook, compare_statements, logged_statements
    from yumen.audit._reconcile import entries_from_export
    from yumen.audit._replay import replay

    entries = entries_from_export(str(export(space, tmp_path)))
    target = next(i for i, (_, e) in enumerate(entries) if isinstance(e, ChargeRecorded) and e.kind == "settle"
                  and e.job_id == jobs["commercial"]["job"]["job_id"])
    index, entry = entries[target]
    forged = dataclasses.replace(entry, amount="260")
    entries[target] = (index, forged)
    book = BillingBook()
    replay(entries, accumulators={"billing": book})
    differences = book.differences + compare_statements(logged_statements(entries), book.statements)
    assert any("260.00" in d and "250.00" in d for d in differences), differences


def test_revenue_is_credited_to_the_departments_that_served_and_adds_up(space, jobs):
    period = time.strftime("%Y-%m", time.gmtime())
    auditor = cli(space, "auditor-1")
    rev = json.loads(auditor("billing", "revenue", "--period", period, "--json").stdout)
    st = _statement(space, period)
    settled = sum(Decimal(j["amount"]) for j in st["jobs"])
    assert Decimal(rev["total"]) == settled
    depts = {r["department"]: Decimal(r["revenue"]) for r in rev["departments"]}
    assert sum(depts.values()) == settled
    # the two cities spent the same ε on the research count: 43.00 splits 21.50 / 21.50
    ds = {r["dataset"]: Decimal(r["revenue"]) for r in rev["datasets"]}
    assert ds["outpatient-visits"] == ds["outpatient-visits-tianshui"] == Decimal("21.50")
    assert rev["year"]["allowed_revenue"] == "200000.00"
    one = json.loads(auditor("billing", "revenue", "--period", period, "--department", "transport-dept", "--json").stdout)
    assert [r["department"] for r in one["departments"]] == ["transport-dept"]


def test_a_department_gets_a_query_log_of_its_datasets(space, jobs):
    year = time.strftime("%Y", time.gmtime())
    rows = json.loads(cli(space, "auditor-1")("report", "queries", "--department", "culture-tourism", "--year", year,
                                              "--json").stdout)
    assert rows and all(r["dataset"] == "scenic-visits" for r in rows)
    assert rows[0]["status"] == "refused" and rows[0]["operator"] == "operator-1" and rows[0]["purpose"] == "research"
    assert {"job_id", "time", "rule", "epsilon", "log_index"} <= set(rows[0])


def _log_totals(entries, year):
    """Totals computed straight from the log's entries, independently of the disclosure code."""
    from yumen.audit import ChargeRecorded, JobDecided, JobExecuted

    revenue = Decimal(0)
    per_ds_revenue: dict[str, Decimal] = {}
    eps: dict[str, Fraction] = {}
    jobs_per_ds: dict[str, int] = {}
    charged = 0
    for _, e in entries:
        if e.time[:4] != year:
            continue
        if isinstance(e, ChargeRecorded) and e.kind == "settle":
            revenue += Decimal(e.amount)
            charged += 1
            for ds, share in e.details["shares"].items():
                per_ds_revenue[ds] = per_ds_revenue.get(ds, Decimal(0)) + Decimal(share)
        elif isinstance(e, JobExecuted) and e.details.get("status") != "refused":
            eps[e.dataset_id] = eps.get(e.dataset_id, Fraction(0)) + Fraction(e.epsilon_charged)
        elif isinstance(e, JobDecided) and e.allowed:
            for ds in e.datasets:
                jobs_per_ds[ds] = jobs_per_ds.get(ds, 0) + 1
    return revenue, charged, per_ds_revenue, eps, jobs_per_ds


@pytest.fixture(scope="module")
def disclosure_page(space, jobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("disclosure")
    year = time.strftime("%Y", time.gmtime())
    proc = cli(space, "auditor-1")("report", "disclosure", "--year", year, "--out", str(out))
    assert f"disclosure-{year}.html" in proc.stdout
    return out / f"disclosure-{year}.html", out / f"disclosure-{year}.json", year


def test_every_figure_on_the_disclosure_page_matches_the_logs_totals(space, disclosure_page, tmp_path):
    from html.parser import HTMLParser

    from yumen.audit._reconcile import entries_from_export

    page, doc_path, year = disclosure_page
    entries = entries_from_export(str(export(space, tmp_path)))
    revenue, charged, per_ds_revenue, eps, jobs_per_ds = _log_totals(entries, year)

    class Figures(HTMLParser):
        def __init__(self):
            super().__init__()
            self.figures, self._open = {}, None

        def handle_starttag(self, tag, attrs):
            self._open = dict(attrs).get("data-figure")

        def handle_data(self, data):
            if self._open:
                self.figures[self._open] = self.figures.get(self._open, "") + data

        def handle_endtag(self, tag):
            self._open = None

    parser = Figures()
    parser.feed(page.read_text(encoding="utf-8"))
    figures = parser.figures
    assert Decimal(figures["revenue_total"]) == revenue and int(figures["jobs_charged"]) == charged
    checked = 0
    for ds in jobs_per_ds:
        assert int(figures[f"{ds}:jobs_total"]) == jobs_per_ds[ds]
        assert Decimal(figures[f"{ds}:revenue"]) == per_ds_revenue.get(ds, Decimal(0))
        f = eps.get(ds, Fraction(0))
        assert Decimal(figures[f"{ds}:epsilon_total"]) == (Decimal(f.numerator) / Decimal(f.denominator)).quantize(Decimal("0.000001"))
        checked += 3
    per_purpose = {k: int(v) for k, v in figures.items() if k.count(":") == 3 and k.endswith(":jobs")}
    assert sum(per_purpose.values()) == sum(jobs_per_ds.values())
    assert checked >= 9
    doc = json.loads(doc_path.read_text())
    assert doc["implementing_body"] and doc["authorizations"] and doc["caps"] and doc["prices"] and doc["operators"]


# -- the page in a real browser ----------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _chromium() -> str:
    """Debian's chromium, installed by scripts/install_chromium.sh (idempotent); skip without it."""
    import shutil

    if shutil.which("chromium") is None:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"chromium is not installed and could not be: {proc.stderr.strip()[-300:]}")
    return shutil.which("chromium") or "chromium"


def _browser(*args, tmp_path):
    """Run headless chromium offline: no network (a dead proxy), its own profile, console to stderr."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _png_pixels(path):
    """(width, height, rows of RGB tuples) of an 8-bit RGB/RGBA PNG, decoded with zlib only."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def test_the_disclosure_page_renders_offline_in_headless_chromium(disclosure_page, tmp_path):
    page, doc_path, _ = disclosure_page
    doc = json.loads(doc_path.read_text())
    url = page.as_uri()
    dom = _browser("--dump-dom", url, tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<svg" in html and 'class="bar"' in html and "<table" in html
    assert "Price caps" in html and "Actual prices" in html and doc["prices"][0]["product"] in html
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Content Security Policy" in line]
    assert not console, console  # no script errors, and nothing the page tried to fetch was blocked
    assert html.count('class="chart"') == len(doc["datasets"]) + 1  # one per dataset and the overview
    # a screenshot of the top of the page, where the overview chart is: its bars are painted
    shot = tmp_path / "chart.png"
    proc = _browser(f"--screenshot={shot}", "--window-size=800,700", "--hide-scrollbars", url, tmp_path=tmp_path)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, rows = _png_pixels(shot)
    colours = [px for row in rows for px in row]
    bar_blue = sum(1 for r, g, b in colours if (r, g, b) == (0x1F, 0x6F, 0xB2))
    distinct = len(set(colours))
    assert bar_blue > 100, f"no chart bars painted ({bar_blue} bar pixels of {width}x{height})"
    assert distinct > 5, "the screenshot is blank"
