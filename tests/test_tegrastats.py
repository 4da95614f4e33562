"""tegrastats parsing on lines in the formats real boards print.

The lines below keep the exact shape of tegrastats output published for each board (field order,
units, brackets, sensor names); the sources are public logs and parsers found on GitHub:
AGX Xavier JetPack 4 from martinkersner/gtop PR #7, the others from tegrastats logs quoted in
Jetson tooling repositories. Numbers were changed where a test needs known values.
"""
import pytest

from edge_digr.runtime.tegrastats import parse_line, parse_lines, summarize

# Orin Nano, JetPack 6 (L4T R36): mW units, GR3D_FREQ with bracketed per-GPC frequency, lower-case zones.
ORIN_NANO_JP6 = (
    "10-08-2026 04:35:02 RAM 6712/7620MB (lfb 12x4MB) SWAP 369/3810MB (cached 8MB) "
    "CPU [38%@1497,2%@729,1%@729,0%@729,1%@729,0%@729] EMC_FREQ 61%@2133 GR3D_FREQ 99%@[612] "
    "NVDEC off NVJPG off VIC off OFA off APE 200 cpu@57.125C soc2@55.093C soc0@56.625C gpu@58.625C "
    "tj@58.312C soc1@55.937C VDD_IN 16321mW/11204mW VDD_CPU_GPU_CV 7104mW/4944mW VDD_SOC 3120mW/3659mW")
# Orin Nano, JetPack 5 (L4T R35): no EMC field, GR3D_FREQ without frequency.
ORIN_NANO_JP5 = (
    "03-09-2026 14:12:52 RAM 1905/7620MB (lfb 36x4MB) SWAP 320/12002MB (cached 20MB) "
    "CPU [0%@729,0%@729,1%@729,0%@729,0%@729,0%@729] GR3D_FREQ 0% cpu@46.125C soc2@45.843C "
    "soc0@44.156C gpu@45.062C tj@46.125C soc1@46C VDD_IN 4742mW/4742mW VDD_CPU_GPU_CV 482mW/482mW "
    "VDD_SOC 1446mW/1446mW")
# Newer L4T: three figures per rail and per temperature.
ORIN_R39 = (
    "09-01-2026 09:25:18 RAM 5739/7546MB (lfb 1x2MB) SWAP 2047/2048MB (cached 209MB) "
    "CPU [72%@1728,75%@1728,88%@1728,79%@1728,87%@1728,78%@1728] GR3D_FREQ 33% cpu@50C/50C "
    "soc2@47.937C/47.937C gpu@48.75C/48.75C tj@50C/50C VDD_IN 9761mW/9761mW/9761mW "
    "VDD_CPU_GPU_CV 4238mW/4238mW/4238mW VDD_SOC 1825mW/1825mW/1825mW")
# AGX Orin, JetPack 5/6: sub-rails only, no input rail; two GPCs.
AGX_ORIN = (
    "11-21-2025 08:49:48 RAM 13983/62780MB (lfb 424x4MB) SWAP 126/31390MB (cached 0MB) "
    "CPU [90%@2201,100%@2201,100%@2201,100%@2201] EMC_FREQ 1%@2133 GR3D_FREQ 14%@[407,407] "
    "VIC_FREQ 115 NVDLA0_FREQ @1600 APE 174 CV0@73.625C CPU@77.281C Tboard@62C SOC2@70C "
    "Tdiode@62.25C GPU@69.125C tj@77.281C VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 14312mW/12415mW "
    "VIN_SYS_5V0 4968mW/5048mW VDDQ_VDD2_1V8AO 1091mW/1091mW")
# Xavier NX, JetPack 5.
XAVIER_NX = (
    "RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C AO@37.5C GPU@37.5C "
    "PMIC@50C VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW")
# AGX Xavier, JetPack 4.2: no units, short rail names, no input rail.
AGX_XAVIER_JP4 = (
    "RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) "
    "CPU [0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% "
    "AO@30C GPU@30.5C Tboard@31C Tdiode@32C AUX@30.5C CPU@31.5C thermal@30.8C PMIC@100C "
    "GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 SYS5V 3306/3306")
# Jetson Nano, JetPack 4: POM_ rails without units, IRAM field.
NANO = (
    "RAM 1655/3956MB (lfb 311x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [14%@204,14%@204,10%@204,11%@204] EMC_FREQ 3%@1600 GR3D_FREQ 16%@76 APE 25 PLL@36C CPU@39C "
    "iwlwifi@44C PMIC@50C GPU@37C AO@47C thermal@38C POM_5V_IN 2247/2189 POM_5V_GPU 78/78 POM_5V_CPU 275/275")


@pytest.mark.parametrize("line, rails, rail, gpu, ram", [
    (ORIN_NANO_JP6, {"VDD_IN": 16321, "VDD_CPU_GPU_CV": 7104, "VDD_SOC": 3120}, "VDD_IN", 99, (6712, 7620)),
    (ORIN_NANO_JP5, {"VDD_IN": 4742, "VDD_CPU_GPU_CV": 482, "VDD_SOC": 1446}, "VDD_IN", 0, (1905, 7620)),
    (ORIN_R39, {"VDD_IN": 9761, "VDD_CPU_GPU_CV": 4238, "VDD_SOC": 1825}, "VDD_IN", 33, (5739, 7546)),
    (AGX_ORIN, {"VDD_GPU_SOC": 3150, "VDD_CPU_CV": 14312, "VIN_SYS_5V0": 4968, "VDDQ_VDD2_1V8AO": 1091},
     None, 14, (13983, 62780)),
    (XAVIER_NX, {"VDD_IN": 5079, "VDD_CPU_GPU_CV": 696, "VDD_SOC": 1104}, "VDD_IN", 0, (2690, 6854)),
    (AGX_XAVIER_JP4, {"GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306},
     None, 0, (14700, 15692)),
    (NANO, {"POM_5V_IN": 2247, "POM_5V_GPU": 78, "POM_5V_CPU": 275}, "POM_5V_IN", 16, (1655, 3956)),
], ids=["orin-nano-jp6", "orin-nano-jp5", "orin-r39", "agx-orin", "xavier-nx", "agx-xavier-jp4", "nano"])
def test_rails_load_and_ram_are_read_exactly(line, rails, rail, gpu, ram):
    s = parse_line(line)
    # Exactly these rails: RAM/SWAP/IRAM figures, CPU lists and frequencies are not mistaken for rails,
    # and the instantaneous figure (first) is the one kept.
    assert s.rails_mw == rails
    assert s.input_rail == rail
    assert s.gpu_load_pct == gpu
    assert (s.ram_used_mb, s.ram_total_mb) == ram


def test_temperatures_are_parsed_including_three_figure_form():
    assert parse_line(ORIN_NANO_JP6).temperatures_c["tj"] == pytest.approx(58.312)
    assert parse_line(ORIN_R39).temperatures_c["gpu"] == pytest.approx(48.75)
    assert parse_line(NANO).temperatures_c["thermal"] == pytest.approx(38.0)


def test_a_disconnected_sensor_is_not_a_temperature():
    s = parse_line("RAM 1500/7850MB GR3D_FREQ 0% cpu@-256C tj@47.343C VDD_GPU_SOC 1191mW/1191mW")
    assert "cpu" not in s.temperatures_c and s.temperatures_c["tj"] == pytest.approx(47.343)


def test_lines_without_stats_are_skipped():
    assert parse_line("") is None
    assert parse_line("tegrastats: started") is None
    assert len(parse_lines([NANO, "", "garbage", ORIN_NANO_JP5])) == 2


def test_summary_uses_the_input_rail_and_never_sums_sub_rails():
    samples = [parse_line(ORIN_NANO_JP6), parse_line(ORIN_NANO_JP5)]
    s = summarize(samples, duration_s=2.0, inferences=1000)
    mean_w = (16.321 + 4.742) / 2
    assert s.rail == "VDD_IN" and s.mean_w == pytest.approx(mean_w)
    assert s.energy_per_inference_j == pytest.approx(mean_w * 2.0 / 1000)
    # The input rail alone: adding VDD_CPU_GPU_CV and VDD_SOC would double count (they are inside VDD_IN).
    assert s.mean_w < (16.321 + 7.104 + 3.120 + 4.742 + 0.482 + 1.446) / 2
    assert s.rail_means_w["VDD_SOC"] == pytest.approx((3.120 + 1.446) / 2)
    assert s.mean_gpu_load_pct == pytest.approx(49.5)
    assert s.samples == 2


@pytest.mark.parametrize("line", [AGX_ORIN, AGX_XAVIER_JP4], ids=["agx-orin", "agx-xavier"])
def test_boards_without_an_input_rail_report_no_input_power(line):
    s = summarize([parse_line(line)], duration_s=1.0, inferences=10)
    assert s.rail is None and s.mean_w is None and s.energy_per_inference_j is None
    assert "no input rail" in s.note
    assert s.rail_means_w  # every rail still reported on its own


def test_a_rail_can_be_chosen_and_is_flagged_as_a_sub_rail():
    s = summarize([parse_line(AGX_ORIN)], duration_s=1.0, inferences=100, rail="VIN_SYS_5V0")
    assert s.mean_w == pytest.approx(4.968) and s.energy_per_inference_j == pytest.approx(4.968 / 100)
    assert "sub-rail" in s.note
    missing = summarize([parse_line(NANO)], 1.0, 1, rail="VDD_IN")
    assert missing.mean_w is None and "not in the tegrastats output" in missing.note

