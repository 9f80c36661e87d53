"""bench/questions.py: which question files it runs, and the report link it writes into the document."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_DIR))  # the bench imports its neighbours (arena_vs_single, questions_ga)
_spec = importlib.util.spec_from_file_location("questions", BENCH_DIR / "questions.py")
questions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(questions)


def test_arena_questions_leave_out_the_ga_files_of_seed_003():
    names = questions.arena_questions()
    assert "elo" in names and "async-fight" in names
    assert [n for n in names if n.startswith("ga-")] == []
    on_disk = sorted(p.stem for p in questions.QUESTIONS.glob("*.yaml"))
    assert names == [n for n in on_disk if not n.startswith("ga-")]


def test_report_link_points_from_the_document_to_the_page(tmp_path):
    reports = tmp_path / "questions" / "reports"
    reports.mkdir(parents=True)
    (reports / "elo.html").write_text("<html></html>")
    assert questions.report_links(["elo"], reports, tmp_path) == [
        "Report (seed 0): [elo.html](questions/reports/elo.html)", ""]


def test_report_links_name_only_the_pages_that_exist(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ga-8x4.html").write_text("<html></html>")
    assert questions.report_links(["ga-1x16", "ga-8x4"], reports, tmp_path) == [
        "Report (seed 0): [ga-8x4.html](reports/ga-8x4.html)", ""]


def test_report_link_is_absent_when_no_page_was_written(tmp_path):
    assert questions.report_links(["elo"], tmp_path / "questions" / "reports", tmp_path) == []
