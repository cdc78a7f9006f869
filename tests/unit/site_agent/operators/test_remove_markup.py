from site_agent.data.toy import make_toy_dataset
from site_agent.evaluation.quality_proxy import row_defects
from site_agent.operators import Batch, create_operator
from site_agent.operators.cleaning.remove_markup import strip_markup


def _rows(label: str) -> Batch:
    batch, labels = make_toy_dataset(600, seed=11)
    idx = [i for i, lab in enumerate(labels) if lab == label]
    assert idx
    return {c: [batch[c][i] for i in idx] for c in batch}


def test_fixes_every_html_row_of_the_toy_set() -> None:
    raw = _rows("html")
    assert all("markup" in d for d in row_defects(raw))
    out, stats = create_operator("remove_markup", {}).run(raw)
    assert stats.kept == len(raw["answer"]) and stats.dropped == 0
    assert stats.changed == len(raw["answer"])
    assert all(not d for d in row_defects(out))
    assert not any("track(" in a for a in out["answer"])  # script content is gone, not just the tags


def test_leaves_clean_rows_alone() -> None:
    raw = _rows("clean")
    out, stats = create_operator("remove_markup", {"keep_line_breaks": False}).run(raw)
    assert out == raw and stats.changed == 0


def test_entities_scripts_and_line_breaks() -> None:
    html = "<p>Rest &amp; fluids&nbsp;help</p><script>var s = '<p>x</p>';</script><style>p{}</style>" \
           "<ul><li>It&#8217;s</li><li>fine</li></ul><!-- note -->"
    assert strip_markup(html) == "Rest & fluids help\nIt’s\nfine"
    assert strip_markup(html, keep_line_breaks=False) == "Rest & fluids help It’s fine"


def test_text_without_markup_is_untouched() -> None:
    for text in ["a < b and c > d", "  spaced  text ", "AT&T & co", "x<3"]:
        assert strip_markup(text) == text
