with open("/data/output/result.json", "w") as f:
    f.write("this is not json {")
