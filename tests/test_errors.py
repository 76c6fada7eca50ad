"""One-line, deterministic error text."""


def test_error_text_is_deterministic():
    from xcodec_fast.errors import short_error, without_addresses

    class Opaque:
        pass

    text = f"cannot use {Opaque()!r} here"
    assert "0x" in text and without_addresses(text).endswith("Opaque object> here")
    assert short_error(ValueError(text + "\nsecond line")) == "ValueError: " + without_addresses(text)
    assert short_error(KeyError()) == "KeyError" and short_error(OSError("x" * 500), limit=20) == "OSError: " + "x" * 11
    assert without_addresses("pointer 0xdeadbeef01") == "pointer 0x…"
