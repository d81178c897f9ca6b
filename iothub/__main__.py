from iothub.cli import main

main(prog_name="iothub")
