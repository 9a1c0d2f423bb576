"""Course material for the notebooks: exercise checks, reference solutions, diagrams.

    from course import exercise, grading, diagrams

``exercise`` marks a learner's function (replaced by the reference solution when
``RNNCORE_COURSE_SOLUTIONS=1``); ``grading.check_*`` check one exercise each;
``diagrams.draw_*`` draw the cells and the unrolled graph with matplotlib.
"""

from .grading import exercise, solutions_mode

__all__ = ["exercise", "solutions_mode"]
