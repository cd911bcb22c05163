"""Blinded pairwise user studies of two configs of a run: make the page, analyse the answers."""

from analysis.study.analyse import analyse_study
from analysis.study.make import QUESTIONS, make_study

__all__ = ["QUESTIONS", "analyse_study", "make_study"]
