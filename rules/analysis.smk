# placeholder: filled in by the analysis stage


def analysis_targets():
    return []
