"""The machine identity every per-machine result and cache is filed under."""

from xcodec_fast.hardware import cpu_identity, slug

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
"""


def test_generations_with_one_model_name_get_two_identities():
    zen5 = ZEN4.replace("cpu family\t: 25", "cpu family\t: 26")
    assert cpu_identity(ZEN4) == "AMD EPYC family 25 model 17"  # the first processor's block only
    assert cpu_identity(zen5) == "AMD EPYC family 26 model 17"
    assert slug(cpu_identity(ZEN4)) != slug(cpu_identity(zen5))


def test_identity_without_numbers_or_name():
    assert cpu_identity("model name\t: Some ARM core\n") == "Some ARM core"
    assert cpu_identity("processor\t: 0\nBogoMIPS\t: 50.00\n") is None


def test_slug_keeps_the_numbers_and_drops_the_clock():
    name = "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz family 6 model 143"
    assert slug(name) == "intel-xeon-platinum-8480-family-6-model-143"
    assert slug("Intel(R) Xeon(R) Processor") == "intel-xeon"
