"""The HTML report of a run (`evoarena report`): `build.py` reads the store and lays the page
out, `plots.py` draws the charts, `samples.py` the generators' samples, `tune.py` a tuning run's
sections, and `page.py` writes the HTML."""
