"""The clean stage's rules for technical text: code blocks (fenced and indented), stack
traces, logs, issue-template headings and URLs, each keep / shorten / marker, on
real-looking GitHub issue markdown; near-duplicate detection still works on top."""

from __future__ import annotations

import pytest

from tasks.clean import MARKERS, CleanConfig, TextCleaner, clean_rows

PY_TRACE = """Traceback (most recent call last):
  File "/usr/lib/python3.11/site-packages/tensorflow/python/keras/saving.py", line 212, in load_model
    return saved_model_load.load(filepath, compile, options)
  File "/usr/lib/python3.11/site-packages/tensorflow/python/saved_model/load.py", line 880, in load
    raise IOError(f"SavedModel file does not exist at: {path}")
  File "/usr/lib/python3.11/codecs.py", line 322, in decode
    (result, consumed) = self._buffer_decode(data, self.errors, final)
UnicodeDecodeError: 'utf-8' codec can't decode byte 0xd5 in position 38"""

JS_TRACE = """TypeError: Cannot read properties of undefined (reading 'map')
    at renderList (webpack:///./src/components/List.js:41:22)
    at Bridge.emit (chrome-extension://abc/build/main.js:24827:22)
    at async Promise.all (index 0)
    at new Store (chrome-extension://abc/build/main.js:57406:39)"""

LOG = """2023-08-26 06:33:37 INFO  starting worker 1
2023-08-26 06:33:38 INFO  loading model from /models/resnet
2023-08-26 06:33:39 WARN  cache miss for key resnet50
2023-08-26 06:33:40 ERROR worker 1 died: out of memory
2023-08-26 06:33:41 INFO  restarting worker 1"""

ISSUE = f"""### Describe the bug

<!-- A clear and concise description of what the bug is. -->
Loading a saved model from a folder whose name has Chinese characters fails, see https://github.com/tensorflow/tensorflow/issues/61234 and [the docs](https://www.tensorflow.org/guide/keras/save_and_serialize).

### Standalone code to reproduce the issue

```python
import tensorflow as tf
model = tf.keras.models.load_model("D:/模型/my_model")
print(model.summary())
x = tf.zeros((1, 224, 224, 3))
y = model(x)
print(y.shape)
```

### Relevant log output

```shell
{PY_TRACE}
```

In the browser console:

{JS_TRACE}

Server log:

{LOG}

The config I use:

    model_dir: /models/resnet
    batch_size: 32
    workers: 4

### Additional context

_No response_
"""


def clean(text: str = ISSUE, **cfg) -> str:
    return TextCleaner(CleanConfig(**cfg))(text)


def test_defaults_replace_blocks_by_markers():
    out = clean()
    assert out.startswith("Loading a saved model from a folder")
    assert out.count("[stack trace]") == 2 and out.count("[log]") == 1
    assert out.count("[code]") == 2 and out.count("[url]") == 1
    for gone in ("###", "<!--", "_No response_", "https://", "import tensorflow", "06:33"):
        assert gone not in out, gone


SHORTEN = dict(
    code_blocks="shorten", stack_traces="shorten", logs="shorten", indented_code="keep", urls="drop"
)


def test_shorten_on_an_issue():
    out = clean(**SHORTEN)
    assert out.startswith("Loading a saved model from a folder")
    # template headings, HTML comments and "_No response_" go
    for gone in ("###", "<!--", "_No response_", "https://", "Describe the bug"):
        assert gone not in out, gone
    assert "see and the docs." in out  # the link keeps its text, the bare URL goes
    # the Python trace (in a fence) keeps its first lines and the exception line
    assert "Traceback (most recent call last):" in out
    assert "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xd5 in position 38" in out
    assert "codecs.py" not in out and "```shell" not in out
    # the JS trace keeps the error line and its first frames
    assert "TypeError: Cannot read properties of undefined (reading 'map')" in out
    assert "at renderList" in out and "at new Store" not in out
    # the log keeps its first lines
    assert "starting worker 1" in out and "restarting worker 1" not in out
    # a short fenced code block and indented code are kept as they are
    assert 'model = tf.keras.models.load_model("D:/模型/my_model")' in out
    assert "workers: 4" in out


def test_markers_replace_every_block():
    out = clean(
        code_blocks="marker",
        stack_traces="marker",
        logs="marker",
        indented_code="marker",
        urls="marker",
    )
    assert out.count(MARKERS["stack_trace"]) == 2  # the fenced Python one and the JS one
    assert out.count(MARKERS["log"]) == 1
    assert out.count(MARKERS["code"]) == 2  # the fenced snippet and the indented config
    assert out.count(MARKERS["url"]) == 1  # the bare URL; the link keeps its text
    for gone in ("import tensorflow", 'File "', "at renderList", "06:33", "batch_size: 32"):
        assert gone not in out, gone
    # the error line in front of the JS frames is prose, kept
    assert "TypeError: Cannot read properties" in out


def test_keep_leaves_blocks_whole_and_shorten_cuts_them():
    kept = clean(stack_traces="keep", logs="keep", code_blocks="keep", urls="keep")
    assert "codecs.py" in kept and "at new Store" in kept and "restarting worker 1" in kept
    assert "https://github.com/tensorflow/tensorflow/issues/61234" in kept
    short = clean(**{**SHORTEN, "trace_max_lines": 1, "log_max_lines": 2, "code_max_lines": 2})
    lines = short.split("\n")
    i = lines.index("Traceback (most recent call last):")
    assert lines[i + 1 : i + 3] == ["...", PY_TRACE.split("\n")[-1]]
    j = lines.index("2023-08-26 06:33:37 INFO starting worker 1")
    assert lines[j + 1 : j + 3] == [
        "2023-08-26 06:33:38 INFO loading model from /models/resnet",
        "...",
    ]
    assert "x = tf.zeros((1, 224, 224, 3))" not in short  # code cut to 2 lines


def test_headings_keep_their_words_and_urls_shorten_to_hosts():
    out = clean(headings="keep", urls="shorten", code_blocks="shorten")
    assert "Describe the bug" in out and "Standalone code to reproduce the issue" in out
    assert "###" not in out and "_No response_" not in out
    assert "see github.com and the docs." in out
    assert clean("### Only a heading line", headings="drop") == "### Only a heading line"


def test_prose_is_not_taken_for_traces_logs_or_code():
    text = (
        "It fails at the moment I click save.\nat least twice a day\n\n"
        "Steps:\n- open the app\n    - nested item\n    - another nested item\n"
        "2 of 3 runs fail"
    )
    assert clean(text, indented_code="marker", stack_traces="marker", logs="marker") == (
        "It fails at the moment I click save.\nat least twice a day\n\nSteps:\n"
        "- open the app\n- nested item\n- another nested item\n2 of 3 runs fail"
    )


def test_rule_counts_and_bad_values_name_the_option():
    res = clean_rows(
        ["a", "b"],
        [ISSUE, "plain text here"],
        [["bug"], ["feature"]],
        CleanConfig(stack_traces="marker", logs="shorten"),
    )
    assert res.rule_changes["stack_traces"] == 1 and res.rule_changes["logs"] == 1
    with pytest.raises(ValueError, match="stack_traces"):
        CleanConfig(stack_traces="drop-it")
    with pytest.raises(ValueError, match="urls"):
        CleanConfig(urls="hide")


@pytest.mark.parametrize(
    "rules", [{}, {"stack_traces": "marker", "logs": "marker", "code_blocks": "marker"}]
)
def test_near_duplicates_still_found_and_templates_do_not_merge_issues(rules):
    other = (
        "### Describe the bug\n\nThe settings page renders blank after the upgrade to "
        "version 5 on Firefox; reloading does not help and the console stays empty.\n\n"
        f"### Relevant log output\n\n```\n{PY_TRACE}\n```\n\n### Additional context\n\n_No response_"
    )
    edited = ISSUE.replace("Chinese characters", "Japanese characters")
    ids = ["orig", "edited", "other"]
    res = clean_rows(ids, [ISSUE, edited, other], [[], [], []], CleanConfig(**rules))
    dropped = {d["id"]: d for d in res.dropped}
    assert set(dropped) == {"edited"}
    assert dropped["edited"]["reason"] == "near_duplicate"
    assert dropped["edited"]["duplicate_of"] == "orig"
