"""Clerc and Kennedy's (2002) constriction coefficients, PSO's defaults: chi = 0.7298 with
phi = 4.1 makes the swarm converge without velocity clamping. A module of its own, free of numpy,
because the spec reads these defaults and `evoarena submit` loads the spec without numpy."""

INERTIA = 0.7298
ACCELERATION = 1.49618
