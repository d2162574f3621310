"""How fast rows may go: the throttle, the rate controllers and the hints answers give them, key pools, budgets."""
