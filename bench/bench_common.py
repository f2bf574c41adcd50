"""What the PyTorch reference scripts of `triad bench` share."""


def peak_rss_mib():
    """Peak resident memory of this process, MiB. VmHWM, not getrusage: ru_maxrss survives
    execve, so it would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
