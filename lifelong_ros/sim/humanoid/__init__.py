"""The embedded humanoid: MuJoCo Menagerie's Unitree G1 with hands at a table, behind the same
simulator interface as Meta-World (tasks as data, reset/step/success, scripted experts).

Modules: ``scene`` (the model: robot from the installed asset package, table, objects),
``ik`` (damped least squares), ``tasks`` (variations and success), ``experts`` (scripted
waypoints + IK + grasp), ``env`` (``G1Sim``, ``collect_demonstrations``, ``evaluate``).
"""
