"""How fast rows may go: the throttle, the rate controllers, key pools, budgets."""
