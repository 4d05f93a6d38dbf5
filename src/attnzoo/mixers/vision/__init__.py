"""2-D mixers on channels-last ``[B, h, w, C]`` (issue 5 adds them here)."""
