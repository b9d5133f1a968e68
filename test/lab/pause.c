/* The pod sandbox's process for the lab's offline pause image (test/lab/images.ts): it holds the
 * pod's namespaces, reaps what the runtime leaves to it, and exits on SIGINT/SIGTERM, like
 * Kubernetes' pause. Linked statically: the image holds nothing else. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
