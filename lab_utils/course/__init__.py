"""Stage `course`: the course material around the notebooks: the quizzes and their bank (quiz, quizbank), the report
and its headline figures (report, headline), and the diagrams drawn from a run's shapes (diagrams)."""
