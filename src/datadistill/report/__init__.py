"""The report page of a run folder: the HTML page, its figures and curves.
"""
