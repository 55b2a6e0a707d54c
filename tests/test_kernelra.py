"""The mount's kernel read-ahead as the daemon reads it (fsdriver.kernelra), without the kernel:
a file stands for the sysfs attribute."""

from fsdriver.kernelra import REFRESH, KernelReadahead


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_it_is_zero_until_the_mount_is_found_then_the_setting_read_again_after_refresh(tmp_path):
    attr = tmp_path / "read_ahead_kb"
    attr.write_text("16384\n")
    clock = Clock()
    ra = KernelReadahead(clock)
    assert ra() == 0
    ra.found(str(attr))
    assert ra() == 16 << 20
    attr.write_text("1024\n")  # an admin changed it
    assert ra() == 16 << 20  # read at most once a REFRESH
    clock.now += REFRESH
    assert ra() == 1 << 20


def test_an_unreadable_setting_is_zero(tmp_path):
    clock = Clock()
    ra = KernelReadahead(clock)
    ra.found(str(tmp_path / "gone"))
    assert ra() == 0
    (tmp_path / "gone").write_text("not a number\n")
    clock.now += REFRESH
    assert ra() == 0
