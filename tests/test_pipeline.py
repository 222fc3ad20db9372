"""The detection loop's thread settings: reader/writer priority and OpenCV's worker threads."""

import os
import sys
import threading

import cv2
import pytest

from patchdet.runtime.loop import lower_thread_priority, opencv_threads


def test_opencv_threads_are_set_for_the_block_and_restored():
    before = cv2.getNumThreads()
    with opencv_threads(1):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before
    with pytest.raises(RuntimeError), opencv_threads(1):
        raise RuntimeError("restored on errors too")
    assert cv2.getNumThreads() == before
    with opencv_threads(None):  # None leaves it alone
        assert cv2.getNumThreads() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux-only")
def test_lower_thread_priority_changes_only_the_calling_thread():
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        seen["changed"] = lower_thread_priority(5)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["changed"] is True and seen["nice"] == max(main_nice, 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert lower_thread_priority(0) is False  # 0: unchanged
