raise RuntimeError("the algorithm fell over")
