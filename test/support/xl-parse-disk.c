/* Parse one xl disk spec with libxlutil and print what libxl would get:
 * the test of tools/xen-scripts/xl-dmu-prefix.patch, no hypervisor needed. */
#include <stdio.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

int main(int argc, char **argv)
{
	libxl_device_disk disk;
	XLU_Config *cfg;
	const char *specs[1];
	int rc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DISKSPEC\n", argv[0]);
		return 2;
	}
	cfg = xlu_cfg_init(stderr, "parse-disk");
	libxl_device_disk_init(&disk);
	specs[0] = argv[1];
	rc = xlu_disk_parse(cfg, 1, specs, &disk);
	if (rc) {
		printf("error=%d\n", rc);
		return 1;
	}
	printf("target=%s\nscript=%s\nvdev=%s\naccess=%s\nformat=%s\n",
	       disk.pdev_path ? disk.pdev_path : "",
	       disk.script ? disk.script : "",
	       disk.vdev ? disk.vdev : "",
	       disk.readwrite ? "rw" : "ro",
	       libxl_disk_format_to_string(disk.format));
	return 0;
}
