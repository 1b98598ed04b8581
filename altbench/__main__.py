from altbench.cli import main

main()
